"""Generative model families behind one pure interface (:class:`scl.models.base.Model`)."""

from scl.models.base import Model
from scl.models.categorical import make_categorical
from scl.models.flow import make_flow
from scl.models.gmm import make_gmm

__all__ = ["Model", "make_categorical", "make_flow", "make_gmm"]
