"""Which client actors may train which clients.

With data the head loaded, every actor holds every client's samples and any actor trains any
client (nothing is pinned, except for a sum-only mechanism's round sessions). With silos, the
pool's slots are laid out group by group (:class:`~fedray.client.silo.ActorGroup`), a group's
actors run on its silo's nodes, and a client is trained only by its silo's actors: each
cohort's clients of a silo are dealt round-robin over that silo's slots. Evaluation shards the
test set of each group over that group's actors.
"""

from __future__ import annotations

from fedray.client.silo import ActorGroup


class Placement:
    """Client -> actor slots, from the actor groups and the actors each one got."""

    def __init__(self, groups: list[ActorGroup], actors: list[int]) -> None:
        self.groups = groups
        self.slots: list[list[int]] = []
        start = 0
        for n in actors:
            self.slots.append(list(range(start, start + n)))
            start += n
        self.size = start

    @property
    def routed(self) -> bool:
        """Whether clients are bound to some actors (silos), not trained by any actor."""
        return len(self.groups) > 1 or self.groups[0].labels is not None

    def group_of(self, client_id: int) -> int:
        for g, group in enumerate(self.groups):
            if group.holds(client_id):
                return g
        raise KeyError(f"client {client_id} is in no actor group")

    def assign(self, cohort: list[int]) -> dict[int, int]:
        """A slot per client of a cohort: round-robin over its group's slots, in cohort order
        (over all slots when nothing is routed)."""
        if not self.routed:
            return {cid: i % self.size for i, cid in enumerate(cohort)}
        dealt = [0] * len(self.groups)
        out: dict[int, int] = {}
        for cid in cohort:
            g = self.group_of(cid)
            out[cid] = self.slots[g][dealt[g] % len(self.slots[g])]
            dealt[g] += 1
        return out

    def slot_for(self, client_id: int) -> int | None:
        """The slot that trains `client_id` outside a cohort (async); None: any."""
        if not self.routed:
            return None
        g = self.group_of(client_id)
        slots = self.slots[g]
        return slots[(client_id - self.groups[g].first_client) % len(slots)]

    def shard_of(self, slot: int) -> tuple[int, int]:
        """(shard, shards) of slot `slot`'s group's test set that the slot evaluates."""
        for slots in self.slots:
            if slot in slots:
                return slots.index(slot), len(slots)
        raise KeyError(f"no actor slot {slot}")
