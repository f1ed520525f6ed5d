"""`tail_first` scheduler: the last M non-overlapping chunks, tiled backwards from the end of the response."""

from __future__ import annotations


class TailFirstScheduler:
    needs_entropy = False

    def select(self, entropy_T, response_len, chunks, chunk_len, *, seed):
        starts = []
        t = response_len - chunk_len
        while t >= 0 and len(starts) < chunks:
            starts.append(t)
            t -= chunk_len
        return sorted(starts)
