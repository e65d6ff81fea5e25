// Round trip of a cache line between two CPUs: what a hand-off between two threads costs at this moment.
// Built and loaded by benchmarks/_machine.py (core_roundtrip_ns); C11 atomics and POSIX threads only.
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

static _Alignas(64) _Atomic long ping;
static _Alignas(64) _Atomic long pong;

typedef struct { int cpu; long rounds; } Echo;

static void Pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *RunEcho(void *arg) {
  const Echo *echo = arg;
  Pin(echo->cpu);
  for (long i = 1; i <= echo->rounds; ++i) {
    while (atomic_load_explicit(&ping, memory_order_acquire) != i) {}
    atomic_store_explicit(&pong, i, memory_order_release);
  }
  return 0;
}

// Nanoseconds per round trip between a thread on CPU `a` and one on CPU `b`, over `rounds` round trips
// (the calling thread's affinity is restored); -1 if the second thread cannot start.
double scl_roundtrip_ns(int a, int b, long rounds) {
  Echo echo = {b, rounds};
  pthread_t thread;
  atomic_store(&ping, 0);
  atomic_store(&pong, 0);
  if (pthread_create(&thread, 0, RunEcho, &echo) != 0) return -1.0;
  cpu_set_t old;
  pthread_getaffinity_np(pthread_self(), sizeof old, &old);
  Pin(a);
  struct timespec start, end;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (long i = 1; i <= rounds; ++i) {
    atomic_store_explicit(&ping, i, memory_order_release);
    while (atomic_load_explicit(&pong, memory_order_acquire) != i) {}
  }
  clock_gettime(CLOCK_MONOTONIC, &end);
  pthread_join(thread, 0);
  pthread_setaffinity_np(pthread_self(), sizeof old, &old);
  return ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) / rounds;
}
