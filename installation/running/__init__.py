"""What a running show does besides its loop, each in a module of its own (a mixin of
:class:`~installation.runtime.Runtime`, which keeps the loop and the parts' supervision): the health report
(:mod:`.health`), the fault tally with its fallback to the safe scene (:mod:`.faults`), opening hours
(:mod:`.schedule`) and the first frame while the decoder starts (:mod:`.first_frame`).
"""
