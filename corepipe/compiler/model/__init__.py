"""The model read: an ONNX model loaded, checked and analysed into a `ModelGraph`.

``shapes`` (static shapes, dtypes, what may cross a boundary) -> ``constants`` (values computed
from the weights and static shapes alone, folded or recomputed per stage) -> ``probe`` (every
tensor's shape and bytes, from one run) -> ``graph`` (`analyze`: the nodes the cut indexes).

The bottom room of the compiler: it imports no other room.
"""
