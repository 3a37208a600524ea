"""The shape machinery: dynamic dims, buckets and the choice between them.

``dynamic`` (a model analysed over its dynamic dims) and ``buckets`` (the sizes a profile pads
to) <- ``shapemodes`` (one graph over the range, or buckets: timed on the cut's stages). It
sits above the cut (`..cut`) because choosing a shape mode times the stages the cut makes.
"""
