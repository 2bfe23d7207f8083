"""Atomic, resumable training checkpoints: `model_dir/checkpoints/ckpt-<step>/`.

A checkpoint holds every model variable (weights, BatchNorm statistics, the dropout seed state),
every optimizer variable (step counter, velocities, loss scale) and a `state.json` (epoch, step,
best validation top-1, ...). It is written to a temporary folder and renamed into place, so a
`kill -9` leaves either the previous checkpoints or the new one, never half a file. The last
`keep` checkpoints are kept, plus the one with the best validation top-1.
"""

import json
import os
import re
import shutil
import zipfile

import numpy as np

from tsm_keras import disk
from tsm_keras.errors import DamagedFileError, UsageError

_NAME = re.compile(r"^ckpt-(\d+)$")


class CheckpointManager:
    def __init__(self, directory, model, optimizer, keep=3):
        self.directory = directory
        self.model = model
        self.optimizer = optimizer
        self.keep = max(int(keep), 1)

    def _variables(self):
        return list(self.model.variables) + list(self.optimizer.variables)

    def checkpoints(self):
        """Complete checkpoints, oldest first: [(step, path)]."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = _NAME.match(name)
            path = os.path.join(self.directory, name)
            if match and os.path.exists(os.path.join(path, "state.json")):
                found.append((int(match.group(1)), path))
        return sorted(found)

    def latest(self):
        found = self.checkpoints()
        return found[-1][1] if found else None

    def best_step(self):
        path = os.path.join(self.directory, "best.json")
        if not os.path.exists(path):
            return None
        record = disk.read_json(path, "the best checkpoint's marker: delete it to go on (the next best result "
                                      "writes it)")
        return record.get("step") if isinstance(record, dict) else None

    def save(self, step, state, best=False):
        """Write checkpoint `step` with `state` (JSON-able dict); `best=True` marks it as the best."""
        os.makedirs(self.directory, exist_ok=True)
        final = os.path.join(self.directory, f"ckpt-{int(step):09d}")
        tmp = os.path.join(self.directory, f".tmp-ckpt-{int(step):09d}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with disk.writing(final, "checkpoint", cleanup=[tmp]):
            os.makedirs(tmp)
            variables = self._variables()
            arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(variables)}
            with open(os.path.join(tmp, "variables.npz"), "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            state = dict(state, step=int(step), paths=[v.path for v in variables])
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump(state, f)
                f.flush()
                os.fsync(f.fileno())
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
        if best:
            _write_json_atomic(os.path.join(self.directory, "best.json"), {"step": int(step), **{
                k: state[k] for k in ("epoch", "val_top1") if k in state}})
        self._prune()
        return final

    def restore(self, path=None):
        """Load the latest (or given) checkpoint into model and optimizer; returns its state or None."""
        path = path or self.latest()
        if path is None:
            return None
        remedy = f"the checkpoint is damaged: delete {path} to resume from the one before it"
        state_file = os.path.join(path, "state.json")
        state = disk.read_json_object(state_file, "the checkpoint's state", remedy)
        if not isinstance(state.get("paths"), list):
            raise DamagedFileError(f"{state_file}: no list of variable paths ('paths'); {remedy}")
        variables = self._variables()
        if len(state["paths"]) != len(variables):
            raise UsageError(f"checkpoint {path} holds {len(state['paths'])} variables, this model and optimizer "
                             f"have {len(variables)}: it was written by a different --backbone/--num_classes/"
                             "--precision; use another --model_dir.")
        arrays_file = os.path.join(path, "variables.npz")
        try:
            with np.load(arrays_file) as arrays:
                values = [arrays[f"v{i:05d}"] for i in range(len(variables))]
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as failure:
            # Cut short, overwritten or edited: np.load's or zipfile's own error says which.
            raise DamagedFileError(f"{arrays_file}: cannot be read ({type(failure).__name__}: {failure}); "
                                   f"{remedy}") from None
        for name, value, variable in zip(state["paths"], values, variables):
            if tuple(value.shape) != tuple(variable.shape):
                raise UsageError(f"checkpoint {path}: {name} has shape {value.shape}, "
                                 f"the model's {variable.path} {tuple(variable.shape)}.")
        for value, variable in zip(values, variables):
            variable.assign(value)
        return state

    def _prune(self):
        found = self.checkpoints()
        best = self.best_step()
        for step, path in found[:-self.keep]:
            if step != best:
                shutil.rmtree(path, ignore_errors=True)


def _write_json_atomic(path, value):
    tmp = f"{path}.tmp"
    with disk.writing(path, "best-checkpoint marker", cleanup=[tmp]):
        with open(tmp, "w") as f:
            json.dump(value, f, indent=2)
        os.replace(tmp, path)


def save_weights_atomic(model, path):
    """`model.save_weights` to a temporary `.weights.h5` then rename: readers never see half a file."""
    tmp = path[: -len(".weights.h5")] + f".tmp{os.getpid()}.weights.h5"
    with disk.writing(path, "weights", cleanup=[tmp]):
        model.save_weights(tmp)
        os.replace(tmp, path)
