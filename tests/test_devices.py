"""experiments/_devices.py: the binaries' XLA CPU-device setting, checked on the environment it writes."""

import _binaries

_devices = _binaries.load("scl_experiments_devices", "experiments", "_devices.py")


def test_one_device_per_core_unless_told_otherwise(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("SCL_CPU_DEVICES", "3")
  assert _devices.cpu_cores_as_devices() == 3
  assert _devices.os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
  # other XLA flags are kept
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
  assert _devices.cpu_cores_as_devices() == 3
  assert _devices.os.environ["XLA_FLAGS"].split() == ["--xla_cpu_multi_thread_eigen=false",
                                                      "--xla_force_host_platform_device_count=3"]


def test_an_explicit_count_or_one_device_is_left_alone(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=5")
  monkeypatch.setenv("SCL_CPU_DEVICES", "2")
  assert _devices.cpu_cores_as_devices() == 1
  assert _devices.os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=5"
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setenv("SCL_CPU_DEVICES", "1")
  assert _devices.cpu_cores_as_devices() == 1
  assert "XLA_FLAGS" not in _devices.os.environ
