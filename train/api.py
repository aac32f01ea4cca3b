"""The training entry point shared by the CLI and Python callers (plain options in, TrainResult out)."""

from __future__ import annotations

import sys
from typing import Any

from dawnpipe.train.config import TrainConfig
from dawnpipe.train.trainer import TrainResult, train

_RENAMED = {"lr": "lr_peak"}  # CLI option name -> TrainConfig field
_PATHS = ("data", "out", "resume")  # stored as strings so configs serialise to JSON


def config_from_options(*, preset: str | None = None, explicit: set[str] | None = None, **options: Any) -> TrainConfig:
    """Build the frozen config from CLI-style options over the named preset (default ``page``).

    ``width`` sets ``model.width``; ``lr`` sets ``lr_peak``; every other key is a TrainConfig field name.
    ``explicit``: the option names the user actually gave (the CLI passes them); the others keep the preset's
    values where it has one. Python callers leave it out: every option they pass is explicit.
    """
    return config_and_notes(preset=preset, explicit=explicit, **options)[0]


def config_and_notes(
    *, preset: str | None = None, explicit: set[str] | None = None, **options: Any
) -> tuple[TrainConfig, list[str]]:
    """config_from_options, plus a note for each preset value an explicit option replaced."""
    from dawnpipe.train.presets import DEFAULT_PRESET, check_preset, preset_config

    name = preset or DEFAULT_PRESET
    preset_values = check_preset(name)
    given = set(options) if explicit is None else explicit
    fields: dict[str, Any] = {}
    for key, value in options.items():
        if key in _PATHS and value is not None:
            value = str(value)
        if key in preset_values and key not in given:
            continue  # the preset decides this one
        fields["width" if key == "width" else _RENAMED.get(key, key)] = value
    return preset_config(name, fields)


def train_command(progress: bool = True, **options: Any) -> TrainResult:
    """Train from CLI options (``explicit``: the names the user typed); under torchrun the run is distributed.

    With ``resume``, options the user typed must match the checkpoint, except RESUME_MAY_CHANGE (resume_changes).
    """
    from dawnpipe.train.distributed import launched_by_torchrun, run_distributed

    explicit = options.pop("explicit", None)
    cfg, notes = config_and_notes(explicit=explicit, **options)
    for note in notes:
        print(f"notice: {note}", file=sys.stderr, flush=True)
    changes: dict[str, Any] = {}
    payload = None
    if cfg.resume:
        from dawnpipe.train.checkpoint import load_checkpoint

        payload = load_checkpoint(cfg.resume)  # read once: the checks below and the trainer share it
        if options.get("preset") is not None:
            _check_resume_preset(cfg, payload)
        given = set(options) if explicit is None else set(explicit)
        changes = resume_changes(cfg, given - {"resume", "preset"}, payload)
    if launched_by_torchrun():
        return run_distributed(cfg, progress=progress, resume_changes=changes, resume_payload=payload)
    return train(cfg, progress=progress, resume_changes=changes, resume_payload=payload)


def resume_changes(cfg: TrainConfig, given: set[str], payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options a resumed run takes from the command line instead of its checkpoint; the others must agree.

    A resumed run continues as it was trained: an option that would change the trajectory (``--width``,
    ``--epochs``, ``--lr``, the data, ...) and differs from the checkpoint is refused by name, never silently
    ignored. The few that only decide what happens around the steps (RESUME_MAY_CHANGE: the selective target,
    calibrated after the last step; how often the progress line evaluates; the device) win, with a notice.
    ``payload``: the run's checkpoint when the caller has loaded it (else it is read here).
    """
    from dawnpipe.common.errors import DawnpipeError
    from dawnpipe.train.checkpoint import load_checkpoint
    from dawnpipe.train.trainer import RESUME_MAY_CHANGE

    saved = TrainConfig.from_dict((payload or load_checkpoint(cfg.resume))["train_config"])
    fields = {"width" if key == "width" else _RENAMED.get(key, key) for key in given}
    differ, changes = [], {}
    for name in sorted(fields):
        ours = cfg.model.width if name == "width" else getattr(cfg, name, None)
        theirs = saved.model.width if name == "width" else getattr(saved, name, None)
        if name in ("out", "name", "overwrite") or ours == theirs:
            continue
        if name in RESUME_MAY_CHANGE:
            changes[name] = ours
            print(f"notice: --{name.replace('_', '-')} {ours} replaces the run's {theirs} from here on",
                  file=sys.stderr, flush=True)  # fmt: skip
        else:
            differ.append(f"--{'lr' if name == 'lr_peak' else name.replace('_', '-')} {ours} (run: {theirs})")
    if differ:
        raise DawnpipeError(
            f"{cfg.resume} was trained with other options than {', '.join(differ)}; a resumed run continues as trained",
            "drop those options to continue the run, or start a new run with them",
        )
    return changes


def _check_resume_preset(cfg: TrainConfig, payload: dict[str, Any]) -> None:
    """A resumed run continues as it was trained; naming another preset is refused, not silently ignored."""
    from dawnpipe.common.errors import DawnpipeError

    saved = payload.get("train_config", {}).get("preset", "page")
    if saved != cfg.preset:
        raise DawnpipeError(
            f"{cfg.resume} was trained with preset {saved}; --preset {cfg.preset} cannot change a run midway",
            "resume without --preset (it continues as trained), or start a new run with the new preset",
        )
