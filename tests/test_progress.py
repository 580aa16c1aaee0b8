"""Progress bars follow train.progress, also for detectors that train inside fit, and never draw off a terminal."""

from __future__ import annotations

import io
import sys

import torch

from medad.progress import progress_bar, progress_enabled
from medad.train.networks import train_network


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_follow_the_enclosing_setting_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert not progress_bar().disable
    with progress_enabled(False):
        assert progress_bar().disable
        assert not progress_bar(True).disable  # an explicit setting wins
    assert not progress_bar().disable


def test_bars_stay_off_without_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_bar().disable and progress_bar(True).disable


def test_network_training_draws_its_bar_on_a_terminal(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    net = torch.nn.Linear(2, 1)
    train_network(net, torch.rand(8, 2), lambda b: net(b).pow(2).mean(), epochs=2, lr=0.01, batch_size=4,
                  seed=0, name="toy AE")
    with progress_enabled(False):
        quiet = _Terminal()
        monkeypatch.setattr(sys, "stderr", quiet)
        train_network(net, torch.rand(8, 2), lambda b: net(b).pow(2).mean(), epochs=2, lr=0.01, batch_size=4,
                      seed=0, name="toy AE")
    assert "toy AE" in terminal.getvalue() and quiet.getvalue() == ""
