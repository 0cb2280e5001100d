"""Chaos suite: kills, restarts and network faults against real store and bot processes.

    python -m chaos.run --profile ci              # 2,000 messages, under 2 minutes
    make chaos                                    # the long profile: 50,000 messages
    python -m chaos.run --seed N --messages M     # replay a run (the summary prints the line)

Modules: `run` (profiles, the run, the summary), `workload` (the seeded plan and the producers),
`faults` (the cluster under test and the fault scheduler), `proxy` (TCP cut and stall), `check`
(the verdict), `responder` (what the bots answer with). The processes are started, awaited and
killed by ackbot.testing, as in the integration tests. Each run leaves its database, every
service's log, faults.log and summary.json in its workdir.
"""
