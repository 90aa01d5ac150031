// Prometheus-style durations ('90s', '15m', '1h30m', '2d') as seconds and as words.
local units = { s: 1, m: 60, h: 3600, d: 86400 };
local names = { s: 'second', m: 'minute', h: 'hour', d: 'day' };

// [[number, unit], ...] of a duration string; an error for anything else.
local parts(d) =
  local chars = std.stringChars(d);
  local step(state, c) =
    if std.member('0123456789', c) then state { digits+: c }
    else if std.objectHas(units, c) && state.digits != '' then
      state { digits: '', out+: [[std.parseInt(state.digits), c]] }
    else error 'not a duration: %s' % d;
  local end = std.foldl(step, chars, { digits: '', out: [] });
  if end.digits != '' || end.out == [] then error 'not a duration: %s' % d else end.out;

{
  // seconds('15m') == 900
  seconds(d):: std.foldl(function(sum, p) sum + p[0] * units[p[1]], parts(d), 0),
  // words('15m') == '15 minutes', words('1h30m') == '1 hour 30 minutes'
  words(d):: std.join(' ', [
    '%d %s%s' % [p[0], names[p[1]], if p[0] == 1 then '' else 's']
    for p in parts(d)
  ]),
}
