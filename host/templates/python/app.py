"""The `{name}` event type for kairos, in Python: a yearly message on the
subject's `{name}` date, at `send_at` (config, `HH:MM`, default 09:00) in
the subject's local time.

The host calls the methods of `EventHandler` (wit/event-plugin.wit documents
them); `wit_world` is the binding componentize-py generates from it. Return
None for no occurrence; raise Err("...") for an error, whose text lands in
the event's `last_error`. There is no real clock or randomness: compute from
the arguments only.
"""

import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log
from wit_world.imports.types import Info, LocalDatetime, Message, Subject

DATE_NAME = "{name}"

# Compiled once, when componentize-py snapshots the module at build time:
# every call runs in a fresh instance, and compiling it there costs each call.
HH_MM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def send_at(config):
    """`send_at` from the config as (hour, minute); an error names the key."""
    value = dict(config).get("send_at", "09:00")
    hh_mm = HH_MM.fullmatch(value)
    if hh_mm is None:
        raise Err(f"config send_at: expected HH:MM, got {value!r}")
    return int(hh_mm[1]), int(hh_mm[2])


def the_date(subject: Subject):
    for key, date in subject.dates:
        if key == DATE_NAME:
            return date
    raise Err(f"subject has no `{DATE_NAME}` date")


def is_leap_year(year):
    return (year % 4 == 0 and year % 100 != 0) or year % 400 == 0


def as_tuple(t: LocalDatetime):
    """A local date-time as a tuple, so that `<` compares it chronologically."""
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


class EventHandler(exports.EventHandler):
    def describe(self) -> Info:
        return Info(
            name="{name}",
            version="0.1.0",
            description="A yearly {name} message at send_at (default 09:00) local time",
            dates=[DATE_NAME],  # users without this date get no events of this type
        )

    def next_occurrence(self, subject: Subject, after: LocalDatetime, config) -> LocalDatetime | None:
        hour, minute = send_at(config)
        date = the_date(subject)

        def in_year(year):
            # February 29 falls on February 28 in common years.
            leap_day = date.month == 2 and date.day == 29 and not is_leap_year(year)
            return LocalDatetime(year, date.month, 28 if leap_day else date.day, hour, minute, 0)

        # Never in the year of the date itself; strictly after `after`.
        candidate = in_year(max(after.year, date.year + 1))
        if as_tuple(candidate) <= as_tuple(after):
            candidate = in_year(candidate.year + 1)
        log.log(log.Level.DEBUG, f"next {DATE_NAME} in {candidate.year}")
        return candidate

    def format_message(self, subject: Subject, occurrence: LocalDatetime, config) -> Message:
        send_at(config)
        return Message(text=f"Hey, {subject.first_name} {subject.last_name}: happy {name}!")
