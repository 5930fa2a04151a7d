"""Stage two, training: the head W fitted on cached (image, teacher) pairs."""

from expclip.stages.fit_head.train import FitConfig, fit_head

__all__ = ["FitConfig", "fit_head"]
