"""Stage two, zero-shot evaluation: UAR/WAR records of a head and of plain CLIP, and the paper's protocol rules
over them (the classes a dataset scores, means over folds, Table 2 beside the paper).

`EvaluateConfig` lives in the torch-free `config` module; the rest is imported on
first use, so reading the configuration (the CLI's --help) does not load torch.
"""

from expclip.stages.evaluate.config import EvaluateConfig

__all__ = ["EvaluateConfig", "evaluate", "fold_means", "unscored_classes", "table2"]


def __getattr__(name: str):
    if name == "evaluate":
        from expclip.stages.evaluate.zero_shot import evaluate

        return evaluate
    if name in ("fold_means", "unscored_classes", "table2"):
        from expclip.stages.evaluate import protocol_rules

        return getattr(protocol_rules, name)
    raise AttributeError(name)
