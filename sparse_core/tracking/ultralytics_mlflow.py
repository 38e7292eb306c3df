"""Switch off Ultralytics' own MLflow callback, which would start a second run (and ``mlflow.autolog()``) and
end the active run at ``on_train_end``; sparsepipe's Tracker logs those metrics itself."""

from __future__ import annotations


def disable_ultralytics_mlflow(trainer=None) -> None:
    """Stop Ultralytics' MLflow callback from running in this process (and on ``trainer`` if given).

    Ultralytics reads ``SETTINGS['mlflow']`` for every trainer and then registers the functions in
    ``ultralytics.utils.callbacks.mlflow.callbacks``. This empties that dict in place, so no later trainer gets
    them, and strips any already added to ``trainer.callbacks``. Unlike ``settings.update({'mlflow': False})`` it
    writes nothing to the user's ``settings.json`` (that change would outlive this process and affect every other
    Ultralytics use on the machine). Safe to call many times; a no-op when Ultralytics is not installed.
    """
    try:
        from ultralytics.utils.callbacks import mlflow as ul_mlflow
    except ImportError:
        return
    ul_mlflow.callbacks.clear()
    if trainer is not None and getattr(trainer, "callbacks", None):
        for event, funcs in trainer.callbacks.items():
            trainer.callbacks[event] = [f for f in funcs if getattr(f, "__module__", None) != ul_mlflow.__name__]
