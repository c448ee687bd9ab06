"""A machine without a display: the browser runs headless by itself, and says so."""

from __future__ import annotations

import logging

import pytest

from lamcontrol.agents.browser import Browser
from lamcontrol.agents.capability import Unavailable


@pytest.fixture
def no_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


def test_without_a_display_the_browser_defaults_to_headless(no_display, caplog):
    with caplog.at_level(logging.INFO, logger="lamcontrol.agents.browser"):
        browser = Browser({})
    assert browser.settings["headless"] is True
    assert "no display here, so the browser runs headless" in caplog.text


def test_an_explicit_choice_is_kept(no_display, caplog):
    with caplog.at_level(logging.INFO, logger="lamcontrol.agents.browser"):
        shown = Browser({"headless": False})
    assert shown.settings["headless"] is False and "runs headless" not in caplog.text
    with pytest.raises(Unavailable, match="headless = true"):
        shown.check()


def test_with_a_display_the_default_stays_a_window(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":99")
    assert Browser({}).settings["headless"] is False
