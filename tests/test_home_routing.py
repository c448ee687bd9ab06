"""Sentences about the house reach the home capability; everything else stays where it was."""

from __future__ import annotations

import pytest

from lamcontrol.coordinator.grammar import parse_chain
from lamcontrol.coordinator.home_routing import home_prompt_line, route_home

VOCABULARY = {
    "home": ["Bedroom", "Desk lamp", "Garage door", "Good night", "Kitchen", "Living Room", "Living room lights",
             "Movie night", "Computer plug"],
    "computer": ["spotify", "firefox"],
    "messaging": ["Jason"],
}


@pytest.mark.parametrize("prompt, command", [
    ("turn off the desk lamp", "home turn off the desk lamp"),
    ("Turn off the Desk Lamp.", "home turn off the desk lamp"),
    ("set the living room lights to 30 percent", "home set the living room lights to 30 percent"),
    ("is the garage door open?", "home is the garage door open"),
    ("activate movie night", "home activate movie night"),
    ("run the good night script", "home script Good night"),
    ("activate the movie night scene", "home scene Movie night"),
    ("start good night script please", "home script Good night"),
    ("Hey, could you please dim the living room to 20%?", "home dim the living room to 20%"),
    ("what's the temperature in the kitchen", "home what's the temperature in the kitchen"),
    ("close the garage door now", "home close the garage door"),
    ("switch on the computer plug", "home switch on the computer plug"),
    # not a home request, names no home thing, or belongs to another capability
    ("turn off my computer", None),
    ("turn the volume down in the bedroom", None),
    ("open spotify in the bedroom", None),
    ("open youtube and play the desk lamp song", None),
    ("text Jason the garage door is open", None),
    ("tell Jason to turn off the desk lamp", None),
    ("turn off the flux capacitor", None),
    ("the desk lamp is nice", None),
    ("what is the weather", None),
    ("turn off the desk lamp && computer volume 50", None),
    ("", None),
])
def test_route_home(prompt, command):
    assert route_home(prompt, VOCABULARY) == command


def test_nothing_is_routed_without_home_names():
    assert route_home("turn off the desk lamp", {"computer": ["spotify"]}) is None
    assert route_home("turn off the desk lamp", {"home": []}) is None


def test_a_home_name_that_is_a_computer_word_never_wins():
    assert route_home("turn off my computer", {"home": ["Computer", "Desk lamp"]}) is None


@pytest.mark.parametrize("prompt, action, args", [
    ("turn off the desk lamp", "say", {"text": "turn off the desk lamp"}),
    ("run the good night script", "script", {"name": "Good night"}),
    ("activate the movie night scene", "scene", {"name": "Movie night"}),
])
def test_routed_commands_pass_the_grammar(prompt, action, args):
    [command] = parse_chain(route_home(prompt, VOCABULARY)).commands
    assert (command.capability, command.action, command.args) == ("home", action, args)


@pytest.mark.parametrize("text, action, args", [
    ("home turn off the desk lamp", "say", {"text": "turn off the desk lamp"}),
    ("home scene movie night", "scene", {"name": "movie night"}),
    ("home script good night", "script", {"name": "good night"}),
    ("home run good night", "run", {"name": "good night"}),
    ("Google Home good night", "run", {"name": "good night"}),
])
def test_the_grammar_knows_home_commands(text, action, args):
    [command] = parse_chain(text).commands
    assert (command.capability, command.action, command.args) == ("home", action, args)


@pytest.mark.parametrize("text, reason", [
    ("home", "The command needs something to tell the home."),
    ("home scene", "The command needs a scene name."),
    ("home run", "The command needs a script or scene name."),
    ("google home", "The command needs an automation name."),
])
def test_incomplete_home_commands_say_what_is_missing(text, reason):
    assert parse_chain(text).reason == reason


def test_the_llm_line_lists_the_home_names():
    line = home_prompt_line(VOCABULARY)
    assert "Desk lamp, Garage door" in line and "`home <the sentence>`" in line
    assert home_prompt_line({}) == ""
