"""Rules across modifiers: combinations every field is valid in on its own, but the recipe as a whole is not.

Checked by ``load_recipe`` (so ``sparsepipe recipe check`` and a step's first line report them, before any data is
fetched or a model built), not by the executors at training time. A rule about one modifier's own fields belongs
in that modifier's ``problems()`` (``schemas``).
"""

from __future__ import annotations

from sparse_core.errors import NotSupportedYet, UserError


def check_rules(modifiers: list, label: str, staged: bool = False) -> None:
    """Raise the first broken rule as a one-line error naming ``label:line`` of the modifier concerned.

    ``staged``: the recipe is trained stage by stage (``Recipe.split``: the pipelines' sparse_train then qat), so
    channel pruning and QAT in one recipe are fine; trained in one run (``train``, ``recipe check``) they are not."""
    quant = [m for m in modifiers if m.type_name == "QuantizationModifier"]
    if len(quant) > 1:
        raise UserError(f"{label}:{quant[1].line}: QuantizationModifier: the recipe has {len(quant)} "
                        "QuantizationModifiers; expected one (a model is prepared for QAT once)")
    channels = [m for m in modifiers if m.kind == "pruning" and getattr(m, "mask_type", None) == "filter"]
    if channels and quant and not staged:
        m = channels[0]
        raise NotSupportedYet(f"{label}:{m.line}: {m.type_name}: mask_type: filter and a QuantizationModifier in "
                              "one recipe is not supported (QAT restructures the layers the channel masks and "
                              "thinning work on); train the structured recipe first, then QAT on its thinned "
                              "last.pt (the pipelines do this stage by stage; `recipe check --staged`)")
