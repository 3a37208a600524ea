"""The private descriptor pool that holds corepipe's copy of the KServe / Triton messages."""

from __future__ import annotations

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
