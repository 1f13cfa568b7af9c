"""What every part of the project shares, ELF aside: the errors behind the exit codes, reading an input file
with a bound, the signals a command unwinds on, running a build command. It imports nothing of the project."""
