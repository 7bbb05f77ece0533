"""Benchmark suites in the database and the studies run over them.

`suites` stores what `store.suites.read_suite` parsed (a Suite, its units, a concept per unit
with reference images); `create` expands a study, one experiment per unit with the same grid and
seeds, in one transaction; `progress` says how far a study is and when it will end.
"""
