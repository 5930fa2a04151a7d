"""Stage two, zero-shot evaluation: UAR/WAR records of a head and of plain CLIP, and the paper's protocol rules
over them (the classes a dataset scores, means over folds, Table 2 beside the paper)."""

from expclip.stages.evaluate.protocol_rules import fold_means, table2, unscored_classes
from expclip.stages.evaluate.zero_shot import evaluate

__all__ = ["evaluate", "fold_means", "unscored_classes", "table2"]
