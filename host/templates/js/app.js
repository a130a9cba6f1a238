// The `{name}` event type for kairos, in JavaScript: a yearly message on the
// subject's `{name}` date, at `send_at` (config, `HH:MM`, default 09:00) in
// the subject's local time.
//
// The host calls `eventHandler`'s three functions (wit/event-plugin.wit
// documents them). Records arrive as objects with camelCase fields;
// returning `undefined` is `none`, throwing a string is `err(string)`, and
// that text lands in the event's `last_error`. There is no real clock or
// randomness: compute from the arguments only.

import { log } from 'kairos:plugin/log@0.1.0';

const DATE_NAME = '{name}';

// `send_at` from the config, checked: a bad value is an error naming the key.
function sendAt(config) {
  const value = config.find(([key]) => key === 'send_at')?.[1] ?? '09:00';
  const hhmm = /^([01][0-9]|2[0-3]):([0-5][0-9])$/.exec(value);
  if (!hhmm) throw `config send_at: expected HH:MM, got ${JSON.stringify(value)}`;
  return { hour: Number(hhmm[1]), minute: Number(hhmm[2]) };
}

// The subject's date ({year, month, day}), or an error naming it.
function theDate(subject) {
  const found = subject.dates.find(([key]) => key === DATE_NAME);
  if (!found) throw `subject has no \`${DATE_NAME}\` date`;
  return found[1];
}

const isLeapYear = (year) => (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;

// Compares two local date-times: < 0, 0 or > 0.
function compare(a, b) {
  for (const field of ['year', 'month', 'day', 'hour', 'minute', 'second']) {
    if (a[field] !== b[field]) return a[field] - b[field];
  }
  return 0;
}

export const eventHandler = {
  describe() {
    return {
      name: '{name}',
      version: '0.1.0',
      description: 'A yearly {name} message at send_at (default 09:00) local time',
      // Users without this date get no events of this type.
      dates: [DATE_NAME],
    };
  },

  nextOccurrence(subject, after, config) {
    const { hour, minute } = sendAt(config);
    const date = theDate(subject);
    const inYear = (year) => ({
      year,
      month: date.month,
      // February 29 falls on February 28 in common years.
      day: date.month === 2 && date.day === 29 && !isLeapYear(year) ? 28 : date.day,
      hour,
      minute,
      second: 0,
    });
    // Never in the year of the date itself; strictly after `after`.
    const candidate = inYear(Math.max(after.year, date.year + 1));
    const next = compare(candidate, after) > 0 ? candidate : inYear(candidate.year + 1);
    log('debug', `next ${DATE_NAME} in ${next.year}`);
    return next;
  },

  formatMessage(subject, occurrence, config) {
    sendAt(config);
    return { text: `Hey, ${subject.firstName} ${subject.lastName}: happy {name}!` };
  },
};
