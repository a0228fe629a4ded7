"""Server optimizers: plain, FedAvgM and FedAdam steps, and state carried between rounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from trainer.federate.server_opt import STATE_FILE, ServerState, resume_state, server_step
from trainer.federate.settings import FederateSettings

W = np.array([1.0, -2.0, 0.5], np.float32)
D = np.array([0.1, 0.2, -0.3], np.float32)


def _s(**kw: object) -> FederateSettings:
    return FederateSettings.model_validate({"round_id": "r1", **kw})


def test_plain_step_adds_lr_times_the_delta() -> None:
    new, state = server_step(W, D, ServerState.fresh("none", 3), _s())
    np.testing.assert_allclose(new, W + D, rtol=1e-7)
    new, _ = server_step(W, D, state, _s(server_lr=0.5))
    np.testing.assert_allclose(new, W + 0.5 * D, rtol=1e-7)


def test_avgm_accumulates_momentum_over_rounds() -> None:
    s = _s(server_opt="avgm", momentum=0.9)
    w1, st1 = server_step(W, D, ServerState.fresh("avgm", 3), s)
    np.testing.assert_allclose(w1, W + D, rtol=1e-6)
    w2, st2 = server_step(w1, D, st1, s)
    # Second round: m = 0.9 * D + D.
    np.testing.assert_allclose(w2, w1 + 1.9 * D, rtol=1e-6)
    assert st2.step == 2


def test_adam_step_follows_reddi_et_al() -> None:
    s = _s(server_opt="adam", beta1=0.9, beta2=0.99, tau=1e-3, server_lr=0.01)
    new, st = server_step(W, D, ServerState.fresh("adam", 3), s)
    m = 0.1 * D.astype(np.float64)
    v = 0.01 * D.astype(np.float64) ** 2
    np.testing.assert_allclose(new, W + 0.01 * m / (np.sqrt(v) + 1e-3), rtol=1e-6)
    np.testing.assert_allclose(st.v, v, rtol=1e-6)
    assert s.effective_server_lr == 0.01
    assert _s(server_opt="adam").effective_server_lr == 1e-2
    assert _s(server_opt="avgm").effective_server_lr == 1.0


def test_state_round_trips_and_resumes_only_when_it_fits(tmp_path: Path) -> None:
    s = _s(server_opt="avgm")
    _, st = server_step(W, D, ServerState.fresh("avgm", 3), s)
    st = ServerState(st.optimizer, st.step, "f" * 64, st.m, st.v)
    (tmp_path / STATE_FILE).write_bytes(st.to_bytes())
    got, note = resume_state(tmp_path, s, 3, "f" * 64)
    assert note == "continued from step 1"
    np.testing.assert_array_equal(got.m, st.m)
    _, note = resume_state(tmp_path, s, 3, "0" * 64)
    assert note.startswith("fresh: the base run's state was made for other weights")
    _, note = resume_state(tmp_path, _s(server_opt="adam"), 3, "f" * 64)
    assert note == "fresh: the base run's state is for avgm"
    _, note = resume_state(tmp_path / "nothing", s, 3, "f" * 64)
    assert note == "fresh: the base run has no state"
    (tmp_path / STATE_FILE).write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a server optimizer state"):
        resume_state(tmp_path, s, 3, "f" * 64)


def test_settings_name_a_bad_option() -> None:
    with pytest.raises(ValidationError, match="trim_fraction applies to rule trimmed_mean"):
        _s(rule="median", trim_fraction=0.2)
    with pytest.raises(ValidationError, match="round_id"):
        _s(round_id="a/b")
    with pytest.raises(ValidationError, match="rule"):
        _s(rule="mean")
