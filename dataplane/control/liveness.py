"""Failure detection whose cost per router does not grow with the mesh.

SWIM-style (Das et al., 2002; memberlist): instead of every router pinging
every peer, each router sends one data-path probe per probe interval and
answers about one. The target comes from a shared rotation: in round k the
router at position i of the sorted member list probes the one at i + 1 +
(k mod (n - 1)), so every member is probed by exactly one other each round
(k counts rounds of wall-clock time, which routers share closely enough).

A probe unanswered for one interval, with no frame from the peer meanwhile,
makes the peer *suspect*: it keeps its routes and frames while the prober
pings it every `fast_interval`. Still silent one interval later, the prober
tells every other router, which start pinging it too; each declares it
failed only after its own `confirm_for` of silence (and never sooner than
0.8 × `down_after` after it last heard from the peer, see mesh.py). A peer that answers any
of these pings stops being suspect. With the default 3 s `--down-after`: a
probe within 0.5 s of a death, the report 1 s later, failure everywhere 1 s
after that; a live peer behind 30 % loss misses 30 pings in a row with
probability 0.51^30, about 2e-9.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Timings:
    down_after: float

    @property
    def probe_interval(self):
        return self.down_after / 6

    @property
    def fast_interval(self):
        """Pings to suspect and new peers."""
        return self.down_after / 60

    @property
    def report_after(self):
        """From the unanswered probe to telling the other routers."""
        return 2 * self.probe_interval

    @property
    def confirm_for(self):
        """Silence that makes a suspect peer failed: from the report on (at the
        prober, from its report; at the others, from receiving it)."""
        return self.down_after / 3


def probe_target(members, me, round_number):
    """The peer id `me` probes this round, from the sorted ids of every
    established member and its own; None alone."""
    n = len(members)
    if n < 2:
        return None
    position = members.index(me)
    return members[(position + 1 + round_number % (n - 1)) % n]
