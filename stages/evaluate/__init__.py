"""Stage two, zero-shot evaluation: UAR/WAR records of a head and of plain CLIP, and the paper's protocol rules
over them (the classes a dataset scores, means over folds, Table 2 beside the paper).

`EvaluateConfig` lives in the torch-free `config` module; the rest is imported on
first use, so reading the configuration (the CLI's --help) does not load torch.
"""

from expclip.base.lazy import lazy
from expclip.stages.evaluate.config import EvaluateConfig

__all__ = ["EvaluateConfig", "evaluate", "fold_means", "unscored_classes", "table2"]
RULES = "expclip.stages.evaluate.protocol_rules"
__getattr__ = lazy({"evaluate": "expclip.stages.evaluate.zero_shot",
                    **dict.fromkeys(("fold_means", "unscored_classes", "table2"), RULES)})
