"""Shortest paths over the established connections of a partial mesh."""
from collections import deque


def next_hops(self_id: int, links: dict[int, set[int]]) -> dict[int, tuple[int, int]]:
    """Breadth-first search from `self_id`: {destination: (next hop, hop count)}.

    `links[p]` is the set of peers p reports established connections to. A
    link between two other routers counts only when both ends report it (one
    end may not have noticed yet that it is down); links of `self_id` are
    taken as given, they are this router's own view. Ties between equally
    short paths go to the lowest peer id, so every router decides the same.
    """
    empty = frozenset()

    def neighbours(peer):
        ends = links.get(peer, empty)
        if peer == self_id:
            return sorted(ends)
        return sorted([n for n in ends if peer in links.get(n, empty)])

    routes = {}
    queue = deque()
    for first in neighbours(self_id):
        routes[first] = (first, 1)
        queue.append(first)
    while queue:
        peer = queue.popleft()
        hop, count = routes[peer]
        for nxt in neighbours(peer):
            if nxt != self_id and nxt not in routes:
                routes[nxt] = (hop, count + 1)
                queue.append(nxt)
    return routes
