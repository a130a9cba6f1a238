// Work anniversary: a kairos event type written in JavaScript.
//
// Every year on the day a person started at the company (their `work_start`
// date), at `send_at` (config, `HH:MM`, default 09:00) in their local time:
// "Congratulations {first_name} on {n} year(s) at {company}", with `company`
// from the config (default "the company"). The first occurrence is one year
// after the start; a start on February 29 falls on February 28 in common
// years.
//
// Built into a WebAssembly component by componentize-js (see ../build.sh).
// WIT records arrive as objects with camelCase fields; returning `undefined`
// is `none` and throwing a string is `err(string)`. A plugin gets no real
// clock: everything here is computed from the arguments.

import { log } from 'kairos:plugin/log@0.1.0';

const DATE_NAME = 'work_start';

// The operator's config, checked; throws a message naming the key when a
// value is bad. Unknown keys are ignored.
function settings(config) {
  const value = (key, fallback) => config.find(([k]) => k === key)?.[1] ?? fallback;
  const sendAt = value('send_at', '09:00');
  const hhmm = /^(\d\d):(\d\d)$/.exec(sendAt);
  if (!hhmm || Number(hhmm[1]) > 23 || Number(hhmm[2]) > 59) {
    throw `config send_at: expected HH:MM, got ${JSON.stringify(sendAt)}`;
  }
  return { hour: Number(hhmm[1]), minute: Number(hhmm[2]), company: value('company', 'the company') };
}

// The subject's `work_start` date ({year, month, day}).
function workStart(subject) {
  const found = subject.dates.find(([name]) => name === DATE_NAME);
  if (!found) throw `subject has no \`${DATE_NAME}\` date`;
  return found[1];
}

const isLeapYear = (year) => (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;

// Compares two local date-times field by field: < 0, 0 or > 0.
function compare(a, b) {
  for (const field of ['year', 'month', 'day', 'hour', 'minute', 'second']) {
    if (a[field] !== b[field]) return a[field] - b[field];
  }
  return 0;
}

export const eventHandler = {
  describe() {
    return {
      name: 'work-anniversary',
      version: '0.1.0',
      description: 'Yearly work anniversary on work_start at send_at (default 09:00) local time',
      dates: [DATE_NAME],
    };
  },

  nextOccurrence(subject, after, config) {
    const { hour, minute } = settings(config);
    const start = workStart(subject);
    const anniversaryIn = (year) => ({
      year,
      month: start.month,
      // February 29 falls on February 28 in common years.
      day: start.month === 2 && start.day === 29 && !isLeapYear(year) ? 28 : start.day,
      hour,
      minute,
      second: 0,
    });
    // Not in the start year itself: the first anniversary is a year later.
    const candidate = anniversaryIn(Math.max(after.year, start.year + 1));
    return compare(candidate, after) > 0 ? candidate : anniversaryIn(candidate.year + 1);
  },

  formatMessage(subject, occurrence, config) {
    const { company } = settings(config);
    // Formatted from the subject as it is now: its date may have changed.
    const years = occurrence.year - workStart(subject).year;
    if (years < 1) throw `${DATE_NAME} is not before the occurrence (${occurrence.year})`;
    log('debug', `${years} year work anniversary for ${subject.id}`);
    return {
      text: `Congratulations ${subject.firstName} on ${years} ${years === 1 ? 'year' : 'years'} at ${company}`,
    };
  },
};
