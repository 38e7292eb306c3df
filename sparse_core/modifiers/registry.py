"""Which executor runs a recipe modifier: one registry, one protocol, for every kind of modifier.

Pruning (``modifiers.pruning``), learning rate / weight decay (``modifiers.lr``), structured pruning
(``structured``), quantization (``quantization``) and distillation (``distillation``) each call
``register_executor`` for the modifier types they run; ``RecipeManager`` asks ``executor_for`` and never imports
them. A registration may carry ``when`` (a test on the modifier's fields): ``GMPruningModifier`` with
``mask_type: filter`` goes to the structured executor, every other one to unstructured GMP. The plug-ins named in
``PLUGINS`` are imported on the first lookup, so a manager works whichever of them its caller imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sparse_core.recipe.schemas import Modifier

PLUGINS = ("sparse_core.modifiers.pruning", "sparse_core.modifiers.lr", "sparse_core.structured",
           "sparse_core.quantization", "sparse_core.distillation")


@runtime_checkable
class ModifierExecutor(Protocol):
    """What the manager calls on the executor of one modifier, in this order: ``initialize`` once (after every
    executor exists and the optimizer is hooked), ``update`` at every (fractional) epoch, ``finalize`` at the end;
    ``state_dict`` / ``load_state_dict`` around a checkpoint (resume calls ``load_state_dict`` after
    ``initialize``)."""

    def initialize(self, epoch: float) -> None: ...

    def update(self, epoch: float) -> bool:
        """Advance to ``epoch``; True when masks or the model's structure changed."""
        ...

    def finalize(self) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# (modifier, manager, where) -> executor; ``where`` is "recipe:line: Type" for error messages. The manager is the
# RecipeManager that asks (typed Any: the manager imports this registry, so the registry does not import it back)
ExecutorFactory = Callable[["Modifier", Any, str], ModifierExecutor]
_EXECUTORS: dict[str, list[tuple[Optional[Callable[["Modifier"], bool]], ExecutorFactory]]] = {}
_loaded = False


def register_executor(type_name: str, factory: ExecutorFactory,
                      when: Callable[["Modifier"], bool] | None = None) -> None:
    """Run modifiers of ``type_name`` (for which ``when(modifier)`` holds, if given) with ``factory``.

    Conditional registrations are tried before the unconditional one; registering the same (type, condition)
    again replaces it.
    """
    entries = [e for e in _EXECUTORS.get(type_name, []) if e[0] is not when]
    entries.append((when, factory))
    entries.sort(key=lambda e: e[0] is None)  # stable: conditional ones first, in registration order
    _EXECUTORS[type_name] = entries


def executors() -> dict[str, list]:
    """Every registration (plug-ins loaded), ``type name -> [(when, factory)]``."""
    global _loaded
    if not _loaded:
        _loaded = True
        for name in PLUGINS:
            importlib.import_module(name)
    return _EXECUTORS


def executor_for(mod: "Modifier") -> ExecutorFactory | None:
    """The factory registered for ``mod``, or None when this build cannot run it."""
    for when, factory in executors().get(mod.type_name, []):
        if when is None or when(mod):
            return factory
    return None
