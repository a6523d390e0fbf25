"""`streamrec bench` (issue 7): the job end to end against a plain Python consumer, scorer micro-benchmarks, state
growth, a per-event profile, and a report (JSON + Markdown + PNG plots) in `bench/results/`.

Modules: `cli` (the command and its phases), `e2e` (job and consumer runs on the real services), `load` (the paced
load generator process), `consumer` (the plain-consumer alternative), `models` (synthetic random-weight artefacts of
any catalogue size), `micro` (scorer, growth, profile), `report` (JSON, Markdown, plots), `sysinfo` (machine facts,
CPU accounting).
"""
