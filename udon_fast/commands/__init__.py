"""The command lines, one module per command, each with its parser and `main(argv) -> int`: train, evaluate,
embed, index, search, export, ablate, serve, data and info; `cli` is the convention they share (flags,
help, exit codes, the one error wrapper).  Commands import the library; the library never imports them.
`python -m udon_fast.<command>` runs `udon_fast.commands.<command>` through a thin alias module."""
