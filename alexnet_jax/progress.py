"""Progress lines with a rate and an ETA: the one formula of every long command.

The training loop's step lines (train.log_train) and the tools' lines (prepare,
stats, predict, ensemble, figures) compute and print the time left the same
way: what is left divided by the rate so far, as `1h02m` or `3m05s`.

    meter = progress.Meter('stats', total=10_000, unit='images')
    for batch in meter.iterate(batches):   # or meter.update(n) per item
      ...
    # stats: 3,072/10,000 images | 812 images/s | elapsed 0m04s | ETA 0m09s

A meter stays silent while the whole job looks shorter than `quiet_below_s`
(a command that ends within seconds prints only its results), judged from
the rate after the first FIRST_AFTER_S seconds (a first batch slowed by
start-up says little); then it prints a line, then at most every `every_s`
seconds, and one when the job is done. Lines go to stderr, beside the logs, so that a
tool's results on stdout stay clean.
"""

import sys
import time
from typing import Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar('T')
FIRST_AFTER_S = 2.0   # no projection from the first seconds alone


def format_eta(seconds: float) -> str:
  """'1h02m' or '3m05s' (negative: 0m00s; unknown: '?')."""
  if seconds != seconds or seconds == float('inf'):
    return '?'
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def eta_seconds(remaining: float, rate: float) -> float:
  """Seconds left: `remaining` units at `rate` units per second (inf at rate 0)."""
  return remaining / rate if rate > 0 else float('inf')


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


class Meter:
  """Counts units of work done towards `total` and prints progress lines."""

  def __init__(self, label: str, total: int, unit: str = 'images', *, done: int = 0,
               every_s: float = 10.0, quiet_below_s: float = 20.0,
               out: Optional[Callable[[str], None]] = None):
    self.label, self.total, self.unit, self.done = label, total, unit, done
    self.every_s, self.quiet_below_s = every_s, quiet_below_s
    self.out = out or _stderr
    self.start, self.start_done = time.monotonic(), done
    self.last = None   # when the last line was printed (None: none yet)

  def rate(self) -> float:
    return (self.done - self.start_done) / max(time.monotonic() - self.start, 1e-9)

  def line(self, detail: str = '') -> str:
    rate, elapsed = self.rate(), time.monotonic() - self.start
    speed = (f'{rate:,.0f} {self.unit}/s' if rate >= 1 else
             f'{60 * rate:.2g} {self.unit}/min')
    return (f'{self.label}: {self.done:,}/{self.total:,} {self.unit}{detail} | {speed} | '
            f'elapsed {format_eta(elapsed)} | '
            f'ETA {format_eta(eta_seconds(self.total - self.done, rate))}')

  def update(self, n: int = 1, detail: str = '') -> None:
    """`n` more units done; prints a line if one is due. `detail` follows the count."""
    self.done += n
    now = time.monotonic()
    finished = self.done >= self.total
    if self.last is None:
      elapsed = now - self.start
      projected = elapsed * self.total / max(self.done - self.start_done, 1e-9)
      due = (elapsed >= min(FIRST_AFTER_S, self.quiet_below_s)
             and projected >= self.quiet_below_s)
    else:
      due = finished or now - self.last >= self.every_s
    if due:
      self.last = now
      self.out(self.line(detail))

  def iterate(self, items: Iterable[T], size: Callable[[T], int] = len) -> Iterator[T]:
    """Yields `items`, counting size(item) units after each."""
    for item in items:
      yield item
      self.update(size(item))
