"""Which conv channels of an Ultralytics YOLO model are coupled, found by tracing channel identities through it.

Every Conv (Conv2d [+ BatchNorm] + an activation with act(0) == 0) produces a *space* of output channels, one
*slot* per channel. A tensor is described by the list of slots it carries: Concat joins lists, C2f's chunk slices
one, Upsample/MaxPool pass it through, and a residual add merges the slots it adds (union-find). Slots merged this
way form a *unit*: one channel that can only be removed everywhere at once. Units whose spaces touch form a
*group* (one sparsity, one ranking). A C2f's two chunk halves must stay equal in size (``chunk(2)``), so its
group is pruned in two equal *segments*.

Whatever the tracer does not understand freezes the slots it touches, so thinning never guesses: the image input,
model outputs (the Detect/Segment prediction convs, Proto's mask protos), grouped/depthwise convs, activations
with act(0) != 0, transposed-conv outputs and any module type without a rule here (it becomes a barrier).
The trace also runs the real model and checks every layer's channel count against it.

Why not torch-pruning's DepGraph: on Ultralytics' stock C2f its ``chunk`` tracing maps indices 96..111 into a
32-channel BatchNorm (torch-pruning 1.6.1), and its YOLOv8 recipe swaps C2f for another class. Rules for the
handful of YOLO modules keep the checkpoint made of stock Ultralytics modules and make removal exactly equal to
the masked model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Space:
    """Output channels of one producer conv; ``conv`` is "" for frozen sources (image input, barriers)."""

    conv: str
    bn: str | None
    start: int
    size: int
    frozen: bool


@dataclass
class Consumer:
    """A conv reading a traced tensor: its input channels are ``slots`` (weight dim 1; dim 0 if transposed)."""

    name: str
    slots: list[int]
    transposed: bool = False


@dataclass
class Group:
    """Spaces coupled through shared units; ``segments`` are lists of unit indices pruned by equal counts."""

    spaces: list[int]
    units: list[list[int]]  # prunable units (slot lists), frozen ones left out
    segments: list[list[int]] = field(default_factory=list)
    split: str | None = None  # the C2f whose cv1 output this group holds (halves kept equal)


class _Unsupported(Exception):
    """A module the rules do not cover: the caller turns it into a barrier."""


class ChannelGraph:
    """Result of ``trace``: spaces, consumers, unions and frozen slots of one model (by module name)."""

    def __init__(self, model: nn.Module):
        self.names = {id(m): n for n, m in model.named_modules()}
        self.spaces: list[Space] = []
        self.slot_space: list[int] = []
        self.parent: list[int] = []
        self.frozen: set[int] = set()
        self.consumers: dict[str, Consumer] = {}
        self.splits: list[tuple[str, list[int], list[int]]] = []  # (C2f name, first half, second half)
        self.barriers: list[str] = []

    # -- building ---------------------------------------------------------------------------------------------
    def new_space(self, conv: nn.Module | None, bn: nn.Module | None, size: int, frozen: bool = False) -> list[int]:
        start = len(self.parent)
        self.spaces.append(Space(self.names[id(conv)] if conv is not None else "",
                                 self.names[id(bn)] if bn is not None else None, start, size,
                                 frozen or conv is None))
        self.slot_space.extend([len(self.spaces) - 1] * size)
        self.parent.extend(range(start, start + size))
        return list(range(start, start + size))

    def consume(self, conv: nn.Module, slots: list[int], transposed: bool = False) -> None:
        name = self.names[id(conv)]
        if name in self.consumers and self.consumers[name].slots != slots:  # called twice on different inputs
            self.freeze(slots + self.consumers[name].slots)
        self.consumers[name] = Consumer(name, list(slots), transposed)

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: list[int], b: list[int]) -> None:
        if len(a) != len(b):
            raise _Unsupported("add of tensors with different channel counts")
        for x, y in zip(a, b):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def freeze(self, slots) -> None:
        for s in _flatten(slots):
            self.frozen.add(s)

    def snapshot(self):
        return (len(self.spaces), len(self.slot_space), list(self.parent), set(self.frozen),
                copy.deepcopy(self.consumers), len(self.splits))

    def restore(self, snap) -> None:
        n_spaces, n_slots, parent, frozen, consumers, n_splits = snap
        del self.spaces[n_spaces:], self.slot_space[n_slots:], self.splits[n_splits:]
        self.parent, self.frozen, self.consumers = parent, frozen, consumers

    # -- results ----------------------------------------------------------------------------------------------
    def units(self) -> tuple[dict[int, list[int]], set[int]]:
        """(root -> slots of that unit, roots of frozen units)."""
        members: dict[int, list[int]] = {}
        for s in range(len(self.parent)):
            members.setdefault(self.find(s), []).append(s)
        frozen = set()
        for root, slots in members.items():
            spaces = [self.slot_space[s] for s in slots]
            if (len(set(spaces)) != len(spaces) or any(s in self.frozen for s in slots)
                    or any(self.spaces[i].frozen for i in spaces)):
                frozen.add(root)
        return members, frozen

    def groups(self) -> list[Group]:
        """Coupled groups with their prunable units; groups whose units are all frozen are left out."""
        members, frozen = self.units()
        parent = list(range(len(self.spaces)))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for slots in members.values():
            spaces = [self.slot_space[s] for s in slots]
            for sp in spaces[1:]:
                a, b = find(spaces[0]), find(sp)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        by_group: dict[int, list[int]] = {}
        for root in members:
            by_group.setdefault(find(self.slot_space[root]), []).append(root)
        split_of = {}
        for name, first, second in self.splits:
            for half, slots in enumerate((first, second)):
                for s in slots:
                    split_of[self.find(s)] = (name, half)
        out = []
        for g, roots in sorted(by_group.items()):
            spaces = sorted({self.slot_space[s] for r in roots for s in members[r]})
            live = [r for r in roots if r not in frozen]
            if not live:
                continue
            splits = {split_of[r][0] for r in roots if r in split_of}
            if splits:
                # a C2f chunk: every unit must sit in one half, none frozen, one C2f per group
                if len(splits) > 1 or len(live) != len(roots) or any(r not in split_of for r in roots):
                    continue
                halves = [[r for r in live if split_of[r][1] == h] for h in (0, 1)]
                units = [members[r] for r in halves[0] + halves[1]]
                n0 = len(halves[0])
                out.append(Group(spaces, units, [list(range(n0)), list(range(n0, len(units)))], splits.pop()))
            else:
                units = [members[r] for r in live]
                out.append(Group(spaces, units, [list(range(len(units)))]))
        return out


def _flatten(x):
    if isinstance(x, int):
        yield x
    else:
        for item in x:
            yield from _flatten(item)


def _zero_safe(act: nn.Module) -> bool:
    """A zeroed channel stays zero through ``act`` (SiLU, ReLU, Identity ...)."""
    with torch.no_grad():
        return float(act(torch.zeros(1)).abs().max()) == 0.0


def _conv(g: ChannelGraph, conv: nn.Module, sx: list[int], bn=None, act=None) -> list[int]:
    if isinstance(conv, nn.ConvTranspose2d):
        if conv.groups != 1 or conv.in_channels != len(sx):
            raise _Unsupported("grouped transposed conv")
        g.consume(conv, sx, transposed=True)
        return g.new_space(None, None, conv.out_channels)
    if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.in_channels != len(sx):
        raise _Unsupported("grouped or unusual conv")
    if bn is not None and not isinstance(bn, nn.BatchNorm2d):
        raise _Unsupported("normalisation other than BatchNorm2d")
    g.consume(conv, sx)
    return g.new_space(conv, bn, conv.out_channels, frozen=act is not None and not _zero_safe(act))


def _apply(g: ChannelGraph, m: nn.Module, sx):
    """Slots of ``m``'s output given its input slots ``sx`` (a list, or a list of lists for multi-input layers)."""
    from ultralytics.nn.modules import C2f, C3, SPP, SPPF, Bottleneck, Concat, Conv, Detect, Proto, Segment

    t = type(m)
    if t is Conv:
        return _conv(g, m.conv, sx, getattr(m, "bn", None), getattr(m, "act", None))
    if t in (nn.Conv2d, nn.ConvTranspose2d):
        return _conv(g, m, sx)
    if t in (nn.Upsample, nn.MaxPool2d, nn.Identity, nn.ZeroPad2d, nn.Dropout):
        return sx
    if t is Concat:
        if m.d != 1:
            raise _Unsupported("concat along a non-channel dim")
        return [s for part in sx for s in part]
    if t is nn.Sequential or t is Proto:
        for child in m.children():
            sx = _apply(g, child, sx)
        return sx
    if t is Bottleneck:
        y = _apply(g, m.cv2, _apply(g, m.cv1, sx))
        if m.add:
            g.union(sx, y)
            return sx
        return y
    if t is C2f:
        a = _apply(g, m.cv1, sx)
        if len(a) % 2:
            raise _Unsupported("odd C2f width")
        h = len(a) // 2
        g.splits.append((g.names[id(m)], a[:h], a[h:]))
        ys = [a[:h], a[h:]]
        for b in m.m:
            ys.append(_apply(g, b, ys[-1]))
        return _apply(g, m.cv2, [s for y in ys for s in y])
    if t is C3:
        a = _apply(g, m.cv1, sx)
        for b in m.m:
            a = _apply(g, b, a)
        return _apply(g, m.cv3, a + _apply(g, m.cv2, sx))
    if t in (SPPF, SPP):
        a = _apply(g, m.cv1, sx)
        n = (getattr(m, "n", 3) if t is SPPF else len(m.m)) + 1
        y = _apply(g, m.cv2, a * n)
        if getattr(m, "add", False):
            g.union(sx, y)
            return sx
        return y
    if t in (Detect, Segment):
        known = {"cv2", "cv3", "cv4", "dfl", "proto", "one2one_cv2", "one2one_cv3", "one2one_cv4"}
        if any(name not in known for name, _ in m.named_children()):
            raise _Unsupported(f"{t.__name__} with extra heads")
        for name in ("cv2", "cv3", "cv4", "one2one_cv2", "one2one_cv3", "one2one_cv4"):
            heads = getattr(m, name, None)
            if heads is None:
                continue
            for i, head in enumerate(heads):
                g.freeze(_apply(g, head, sx[i]))  # predictions: model outputs
        if t is Segment:
            g.freeze(_apply(g, m.proto, sx[0]))  # mask protos: model output
        return None
    raise _Unsupported(t.__name__)


def trace(model: nn.Module, imgsz: int = 64) -> ChannelGraph:
    """Trace the layer list ``model.model`` (Ultralytics' ``f``/``i`` routing) on a ``imgsz`` zero image."""
    g = ChannelGraph(model)
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or not all(hasattr(m, "f") for m in layers):
        raise TypeError("structured pruning needs an Ultralytics model (model.model layers with 'f' routing)")
    channels = model.yaml.get("channels", 3) if isinstance(getattr(model, "yaml", None), dict) else 3
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x: object = torch.zeros(1, channels, imgsz, imgsz, dtype=next(model.parameters()).dtype)
            sx: object = g.new_space(None, None, channels)  # the image: frozen
            ys, sys_ = [], []
            for m in layers:
                if m.f != -1:
                    x = ys[m.f] if isinstance(m.f, int) else [x if j == -1 else ys[j] for j in m.f]
                    sx = sys_[m.f] if isinstance(m.f, int) else [sx if j == -1 else sys_[j] for j in m.f]
                out = m(x)
                snap = g.snapshot()
                try:
                    s_out = _apply(g, m, sx)
                except _Unsupported as why:
                    g.restore(snap)
                    g.barriers.append(f"{g.names[id(m)]} ({why})")
                    g.freeze(sx)
                    s_out = g.new_space(None, None, out.shape[1]) if torch.is_tensor(out) else None
                if torch.is_tensor(out) and (s_out is None or len(s_out) != out.shape[1]):
                    raise RuntimeError(f"structured trace: {g.names[id(m)]} ({type(m).__name__}) gives "
                                       f"{out.shape[1]} channels, traced {None if s_out is None else len(s_out)}")
                ys.append(out)
                sys_.append(s_out)
                x, sx = out, s_out
            if sx is not None:
                g.freeze(sx)  # the last layer's output is the model's
    finally:
        model.train(was_training)
    return g
