"""The trace simulator: ``oaasd simulate``.

It replays a trace in virtual time through the daemon's own scheduling pass
(``oaasd.core.schedule.decide``), policies and placement code; nothing of
them is copied here. One module each:

    trace    read and check traces (CSV, JSONL) and cluster files; write traces
    engine   the virtual clock: arrivals, ends, one pass per event time
    report   completion time, queueing delay, makespan, utilization, Jain's index
    synth    a synthetic workload (heavy tails, diurnal arrivals, mixed sizes)
    command  the ``oaasd simulate`` sub-command
"""
