"""SparseML's QAT state-dict names → ours, and SparseML's optimizer state → our trainer's param-group order.

SparseML wraps a module whose input it quantizes in a QuantWrapper (``X.quant.activation_post_process`` is the
input fake quant, ``X.module`` the wrapped module) and keeps an output fake quant on the wrapped module
(``X.module.activation_post_process``). Ours keeps module names and hangs the fake quants on the module itself
(``X.input_quant``, ``X.output_quant``; ``sparse_core.quantization.modules``). Inside a fake quant (its observer
``activation_post_process``, ``scale``, ``zero_point`` ...) and in torch.ao's ``weight_fake_quant`` the names are
torch's in both. Conv+BN is torch.ao's ``ConvBn2d`` in both, so ``X.conv.weight`` / ``X.conv.bn.*`` agree.
"""

from __future__ import annotations

import torch

from sparse_core.errors import UserError

_INSIDE_FAKE_QUANT = "weight_fake_quant"


def our_name(name: str) -> str:
    """One SparseML state-dict name → ours (identity for float models)."""
    parts, out, i = name.split("."), [], 0
    while i < len(parts):
        pair = parts[i : i + 2]
        if pair == ["quant", "activation_post_process"]:
            return ".".join(out + ["input_quant"] + parts[i + 2 :])
        if pair == ["module", "activation_post_process"]:
            return ".".join(out + ["output_quant"] + parts[i + 2 :])
        if parts[i] == _INSIDE_FAKE_QUANT:
            return ".".join(out + parts[i:])
        if parts[i] != "module":
            out.append(parts[i])
        i += 1
    return ".".join(out)


def map_state(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """SparseML state → our names; the key sets must match exactly (same modules quantized, same parameters)."""
    mapped = {our_name(k): v for k, v in state.items()}
    extra = sorted(set(mapped) - set(target))
    missing = sorted(set(target) - set(mapped))
    if extra or missing:
        detail = "; ".join(f"{label} {len(names)}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
                           for label, names in (("only in the checkpoint", extra), ("only in the rebuilt model",
                                                                                      missing)) if names)
        raise UserError(f"{where}: the rebuilt model does not match the checkpoint's state ({detail}); expected the "
                        "model_yaml and recipe the checkpoint was saved with")
    return mapped


def load_mapped(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a mapped state strictly; observer buffers take the checkpoint's shapes (per-tensor () vs [1] ...)."""
    target = model.state_dict()
    mapped = map_state(state, target, where)
    for key, value in mapped.items():
        if target[key].shape != value.shape:
            if target[key].numel() > 1 and target[key].dim() and "weight_fake_quant" not in key and \
                    not key.endswith(("scale", "zero_point", "min_val", "max_val")):
                raise UserError(f"{where}: {key}: shape {tuple(value.shape)} in the checkpoint, "
                                f"{tuple(target[key].shape)} in the rebuilt model; expected the same model_yaml")
            _owner_buffer(model, key).resize_(value.shape)
    model.load_state_dict(mapped, strict=True)


def _owner_buffer(model: torch.nn.Module, key: str) -> torch.Tensor:
    module_name, _, attr = key.rpartition(".")
    module = model.get_submodule(module_name)
    value = getattr(module, attr)
    if not torch.is_tensor(value):
        raise UserError(f"{key}: not a tensor in the rebuilt model")
    return value


def optimizer_groups(model: torch.nn.Module) -> tuple[list[list[str]], list[str]]:
    """Param names per group in our Ultralytics' SGD order (weight with decay, norm weight, bias), and labels."""
    norm = tuple(v for k, v in torch.nn.__dict__.items() if "Norm" in k)
    groups: list[list[str]] = [[], [], []]
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            groups[2 if "bias" in full else 1 if isinstance(module, norm) else 0].append(full)
    return groups, ["weight", "bn", "bias"]


def map_optimizer(saved: dict | None, float_model: torch.nn.Module) -> tuple[dict | None, str]:
    """SparseML's (Ultralytics 8.0) SGD state, groups [bias, weight, bn], → ours [weight, bn, bias].

    Returns (state dict or None, reason). The mapping is checked: group sizes and every momentum buffer's shape
    against the parameter it belongs to; on any mismatch the optimizer is dropped (reason says why).
    """
    if not saved or len(saved.get("param_groups", [])) != 3:
        return None, "no optimizer state with 3 parameter groups in the checkpoint"
    names, labels = optimizer_groups(float_model)
    params = dict(float_model.named_parameters())
    theirs = dict(zip(("bias", "weight", "bn"), saved["param_groups"]))
    groups, state, index = [], {}, 0
    for label, group_names in zip(labels, names):
        group = theirs[label]
        if len(group["params"]) != len(group_names):
            return None, (f"optimizer group {label}: {len(group['params'])} params in the checkpoint, "
                          f"{len(group_names)} in the rebuilt model")
        new_ids = []
        for old_id, name in zip(group["params"], group_names):
            entry = saved["state"].get(old_id)
            if entry is not None:
                buf = entry.get("momentum_buffer")
                if torch.is_tensor(buf) and buf.shape != params[name].shape:
                    return None, (f"optimizer state of {name}: shape {tuple(buf.shape)}, "
                                  f"param {tuple(params[name].shape)}")
                state[index] = {k: (float(v) if hasattr(v, "dtype") and not torch.is_tensor(v) else v)
                                for k, v in entry.items()}
            new_ids.append(index)
            index += 1
        groups.append({**{k: _plain(v) for k, v in group.items() if k != "params"}, "params": new_ids,
                       "param_group": label})
    return {"state": state, "param_groups": groups}, ""


def _plain(value):
    """numpy scalars (SparseML's momentum warm-up writes numpy floats) → Python numbers."""
    return value.item() if hasattr(value, "item") and not torch.is_tensor(value) else value


@torch.no_grad()
def shift_zero_points(model: torch.nn.Module, where: str) -> int:
    """SparseML's scheme-generation fake quants are all int8 (-128..127; an asymmetric one has a zero point there);
    ours are uint8 (0..255) when asymmetric. The same grid in our range is ``zero_point + 128`` (same scale): the
    quantized values shift by 128 and dequantize to the same floats. Returns the fake quants shifted."""
    from sparse_core.quantization.modules import fake_quant_modules

    n = 0
    for name, fq in fake_quant_modules(model).items():
        if (fq.quant_min, fq.quant_max) != (0, 255):
            continue
        zp = fq.zero_point
        if zp.numel() and (int(zp.min()) < -128 or int(zp.max()) > 127):
            raise UserError(f"{where}: {name}: zero point {int(zp.min())}..{int(zp.max())} is outside int8; expected "
                            "SparseML's int8 fake quantization")
        zp.add_(128)
        n += 1
    return n
