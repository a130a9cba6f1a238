"""Name day: a kairos event type written in Python.

Many countries keep a calendar that gives first names a day of the year; a
person celebrates the day of their name. This type needs no date from the
subject: it looks the subject's first name up in a small built-in calendar
(config `calendar`: `cs` Czech, the default, or `sv` Swedish) and says
"Happy name day, {first_name}!" on that day at `send_at` (config, `HH:MM`,
default 09:00) in the subject's local time. A name the calendar does not
have gets no event; that is not an error.

Built into a WebAssembly component by componentize-py (see ../build.sh).
The host calls the methods of `EventHandler` below; `wit_world` is the
binding componentize-py generates from wit/event-plugin.wit.
"""

import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Info, LocalDatetime, Message, Subject

# Some twenty names of each calendar: first name (lower case) -> (month, day).
# Real calendars have a name or two for every day; these are excerpts. None
# falls on February 29, so every entry exists in every year.
CALENDARS = {
    "cs": {
        "josef": (3, 19), "tomáš": (3, 7), "jiří": (4, 24), "jana": (5, 24),
        "jan": (6, 24), "petr": (6, 29), "pavel": (6, 29), "jakub": (7, 25),
        "anna": (7, 26), "marie": (9, 12), "ludmila": (9, 16),
        "václav": (9, 28), "michal": (9, 29), "karel": (11, 4),
        "martin": (11, 11), "kateřina": (11, 25), "ondřej": (11, 30),
        "mikuláš": (12, 6), "lucie": (12, 13), "adam": (12, 24),
        "eva": (12, 24), "štěpán": (12, 26),
    },
    "sv": {
        "knut": (1, 13), "karl": (1, 28), "valborg": (4, 30), "erik": (5, 18),
        "johannes": (6, 24), "per": (6, 29), "magdalena": (7, 22),
        "birgitta": (7, 23), "kristina": (7, 24), "jakob": (7, 25),
        "olof": (7, 29), "lars": (8, 10), "mårten": (11, 10),
        "katarina": (11, 25), "anna": (12, 9), "lucia": (12, 13),
        "adam": (12, 24), "eva": (12, 24), "stefan": (12, 26),
    },
}

# Compiled when the module loads, which componentize-py does at build time:
# each call runs in a fresh instance, and compiling it there costs every call.
HH_MM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def settings(config):
    """The operator's config, checked: (calendar table, hour, minute).

    Raises Err naming the key when a value is bad; unknown keys are ignored.
    """
    values = dict(config)
    send_at = values.get("send_at", "09:00")
    hh_mm = HH_MM.fullmatch(send_at)
    if hh_mm is None:
        raise Err(f"config send_at: expected HH:MM, got {send_at!r}")
    name = values.get("calendar", "cs")
    if name not in CALENDARS:
        raise Err(f"config calendar: expected one of {', '.join(CALENDARS)}, got {name!r}")
    return CALENDARS[name], int(hh_mm[1]), int(hh_mm[2])


def as_tuple(t: LocalDatetime):
    """A local date-time as a tuple, so that `<` compares it chronologically."""
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


class EventHandler(exports.EventHandler):
    def describe(self) -> Info:
        return Info(
            name="name-day",
            version="0.1.0",
            description="Name-day greeting from a built-in calendar (config calendar: cs, sv) "
            "at send_at (default 09:00) local time",
            dates=[],  # no date from the subject: the calendar has them
        )

    def next_occurrence(self, subject: Subject, after: LocalDatetime, config) -> LocalDatetime | None:
        # Config first, so that bad config fails for every subject (and the
        # host's self-check refuses it) rather than only for known names.
        calendar, hour, minute = settings(config)
        name_day = calendar.get(subject.first_name.strip().lower())
        if name_day is None:
            return None  # no name day for this name: no event
        month, day = name_day
        # This year's name day if it is still to come, else next year's.
        candidate = LocalDatetime(after.year, month, day, hour, minute, 0)
        if as_tuple(candidate) <= as_tuple(after):
            candidate.year += 1
        return candidate

    def format_message(self, subject: Subject, occurrence: LocalDatetime, config) -> Message:
        settings(config)
        return Message(text=f"Happy name day, {subject.first_name}!")
