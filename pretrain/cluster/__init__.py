"""How a run spreads over processes and hosts: process groups, host lists, start-up checks, preemption."""
