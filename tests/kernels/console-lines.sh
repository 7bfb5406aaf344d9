#!/bin/sh
# The guest's report lines (after "JA4K ") from a serial console log on stdin. A kernel message printed in
# the middle of a long line (TCG is slow enough for "hrtimer: interrupt took …" to land inside --validate's
# JSON) is cut out and the line joined again: the message and its line end go, the guest's text continues.
tr -d '\r' | perl -0pe 's/(?<=[^\n])\[ *[0-9]+\.[0-9]+\] [^\n]*\n//g' | sed -n 's/^.*JA4K //p'
