"""SparseML's QAT state-dict names → ours, and SparseML's optimizer state → our trainer's param-group order.

SparseML wraps a module whose input it quantizes in a QuantWrapper (``X.quant.activation_post_process`` is the
input fake quant, ``X.module`` the wrapped module) and keeps an output fake quant on the wrapped module
(``X.module.activation_post_process``). Ours keeps module names and hangs the fake quants on the module itself
(``X.input_quant``, ``X.output_quant``; ``sparse_core.quantization.modules``). Inside a fake quant (its observer
``activation_post_process``, ``scale``, ``zero_point`` ...) and in torch.ao's ``weight_fake_quant`` the names are
torch's in both. A quantized Conv+BN is torch.ao's QAT ``ConvBn2d`` in both, so ``X.conv.weight`` / ``X.conv.bn.*``
agree.

SparseML fuses every Conv+BN of the model before it quantizes any (also outside ``submodules``, in ``ignore``d
modules and in ``exclude_module_types``), and wraps every BN it leaves unfused-for-QAT in a ``_BNWrapper``: a block
it fused but left in float is torch's float ``ConvBn2d`` Sequential, ``X.conv.0.*`` (conv) and ``X.conv.1.bn.*``
(BN). Ours leaves such a block as Ultralytics built it (``X.conv.*``, ``X.bn.*``) or, where our preparation fused it
without quantizing it, as our ``ConvBn2d`` (``X.conv.*``, ``X.conv.bn.*``); ``fused_float`` maps to whichever the
rebuilt model has.
"""

from __future__ import annotations

import re

import torch

from sparse_core.errors import UserError
from sparse_core.sparseml_compat import mismatch

_INSIDE_FAKE_QUANT = "weight_fake_quant"
_FUSED_CONV = re.compile(r"^(.+)\.0\.(weight|bias)$")
_FUSED_BN = re.compile(r"^(.+)\.1\.bn\.([^.]+)$")


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


def fused_float(name: str, target) -> str:
    """A name of SparseML's fused-but-float Conv+BN (``P.0.weight``, ``P.1.bn.running_mean``) → the rebuilt model's
    name for the same tensor (see the module docstring); ``name`` unchanged when it is not one or nothing fits."""
    if name in target:
        return name
    m = _FUSED_CONV.match(name)
    if m:
        candidates = [f"{m.group(1)}.{m.group(2)}"]
    else:
        m = _FUSED_BN.match(name)
        if not m:
            return name
        block, _, attr = m.group(1).rpartition(".")  # P = block.conv: Ultralytics' BN is block.bn
        candidates = [f"{m.group(1)}.bn.{m.group(2)}", f"{block}.bn.{m.group(2)}" if attr == "conv" else ""]
    return next((c for c in candidates if c in target), name)


def map_state(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], where: str,
              why=None) -> dict[str, torch.Tensor]:
    """SparseML state → our names; the key sets must match exactly (same modules quantized, same parameters).
    ``why(module, quantized_in_checkpoint)`` names the recipe field behind a quantization difference."""
    mapped = {fused_float(our_name(k), target): v for k, v in state.items()}
    extra = sorted(set(mapped) - set(target))
    missing = sorted(set(target) - set(mapped))
    if extra or missing:
        raise UserError(f"{where}: the rebuilt model does not match the checkpoint's state "
                        f"({mismatch.describe(extra, missing, why)}); expected the model_yaml and recipe the "
                        "checkpoint was saved with")
    return mapped


def load_mapped(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str, why=None) -> None:
    """Load a mapped state strictly; observer buffers take the checkpoint's shapes (per-tensor () vs [1] ...)."""
    target = model.state_dict()
    mapped = map_state(state, target, where, why)
    if per_tensor_weights(model, mapped):
        target = model.state_dict()
    for key, value in mapped.items():
        if target[key].shape != value.shape:
            if target[key].numel() > 1 and target[key].dim() and "weight_fake_quant" not in key and \
                    not key.endswith(("scale", "zero_point", "min_val", "max_val")):
                raise UserError(f"{where}: {key}: shape {tuple(value.shape)} in the checkpoint, "
                                f"{tuple(target[key].shape)} in the rebuilt model; expected the same model_yaml")
            _owner_buffer(model, key).resize_(value.shape)
    model.load_state_dict(mapped, strict=True)


def per_tensor_weights(model: torch.nn.Module, mapped: dict[str, torch.Tensor]) -> int:
    """SparseML's legacy QuantizationModifier quantized weights per tensor (its QConfigProperties default; its
    resolved recipe does not say so), ours per channel: where the checkpoint holds one weight scale, the rebuilt
    module's weight fake quant becomes per-tensor on the same int8 range. Returns the fake quants replaced."""
    from sparse_core.quantization.modules import fake_quant
    from sparse_core.quantization.scheme import QArgs

    n = 0
    for key, value in mapped.items():
        if not key.endswith(".weight_fake_quant.scale") or value.numel() != 1:
            continue
        module = model.get_submodule(key[: -len(".weight_fake_quant.scale")])
        fq = module.weight_fake_quant
        if fq.qscheme not in (torch.per_channel_symmetric, torch.per_channel_affine):
            continue
        symmetric = fq.qscheme == torch.per_channel_symmetric
        module.weight_fake_quant = fake_quant(QArgs(8, symmetric=symmetric, reduce_range=fq.quant_max == 127 and
                                                    not symmetric))
        n += 1
    return n


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
