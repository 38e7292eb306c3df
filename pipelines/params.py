"""Pipeline parameters from the command line: ``--param k=v`` strings typed by the pipeline's compiled spec."""

from __future__ import annotations

import json

from sparse_core.errors import UserError

_EXPECTED = {"NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a number", "BOOLEAN": "true or false",
             "LIST": "a JSON list or comma-separated values", "STRUCT": "a JSON object"}


def pipeline_inputs(func) -> dict[str, tuple[str, object, bool]]:
    """name -> (IR parameter type, default, has_default) of a pipeline's parameters, from its compiled spec
    (``STRING``, ``NUMBER_INTEGER``, ``NUMBER_DOUBLE``, ``BOOLEAN``, ``LIST``, ``STRUCT``)."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    names = pipeline_spec_pb2.ParameterType.ParameterTypeEnum
    ir = func.pipeline_spec.root.input_definitions.parameters
    out = {}
    for name, spec in func.component_spec.inputs.items():  # declaration order, Python defaults
        out[name] = (names.Name(ir[name].parameter_type), spec.default,
                     spec.default is not None or bool(spec.optional))
    return out


def _convert(name: str, kind: str, value: str):
    try:
        if kind == "NUMBER_INTEGER":
            return int(value)
        if kind == "NUMBER_DOUBLE":
            return float(value)
        if kind == "BOOLEAN":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kind in ("LIST", "STRUCT"):
            if kind == "LIST" and not value.strip().startswith("["):
                return [_scalar(v.strip()) for v in value.split(",") if v.strip()]
            parsed = json.loads(value)
            if not isinstance(parsed, list if kind == "LIST" else dict):
                raise ValueError(value)
            return parsed
    except (ValueError, json.JSONDecodeError):
        raise UserError(f"--param {name}={value}: expected {_EXPECTED.get(kind, kind.lower())}") from None
    return value


def _scalar(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_params(func, pairs: list[str]) -> dict:
    """``['k=v', ...]`` -> typed arguments for ``func``; unknown names and missing required ones are errors."""
    inputs = pipeline_inputs(func)
    params: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--param {pair!r}: expected NAME=VALUE")
        if key not in inputs:
            raise UserError(f"--param {key}: unknown parameter of {func.name}; expected one of "
                            f"{', '.join(sorted(inputs))}")
        params[key] = _convert(key, inputs[key][0], value)
    missing = [n for n, (_, _, has_default) in inputs.items() if not has_default and n not in params]
    if missing:
        raise UserError(f"pipeline {func.name}: missing --param {', --param '.join(f'{m}=...' for m in missing)}")
    return params
