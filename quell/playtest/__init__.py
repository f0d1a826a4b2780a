"""Playbook tests: cases written beside a playbook, run through the real engine with mocks.

:mod:`quell.playtest.cases` reads and checks a cases file, :mod:`quell.playtest.runner` runs
each case on a throwaway database with the action boundary substituted
(:mod:`quell.playtest.mocks`), and :mod:`quell.playtest.compare` says how the run differs from
what the case expects.
"""
