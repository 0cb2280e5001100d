"""ackbot.client: an async client of the MessageStore for internal services.

`Client` (create, get, list, follow), `Publisher` (creates batched into BatchCreateMessages,
a future per message) and `Consumer` (deliveries handed to a callback, leases kept, settled;
`pause`/`resume` for flow control). It needs
grpcio, protobuf and grpcio-status, none of the store's dependencies (`pip install ackbot`).
"""

from ackbot.client.channels import Stores
from ackbot.client.client import Client, new_id
from ackbot.client.consumer import Consumer, ConsumerSettings
from ackbot.client.delivery import Callback, Delivery, HandBack, Handler
from ackbot.client.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StoreError,
    Unauthenticated,
    Unavailable,
)
from ackbot.client.publisher import BatchSettings, Publisher

__all__ = [
    "AlreadyExists",
    "BatchSettings",
    "Callback",
    "Client",
    "Consumer",
    "ConsumerSettings",
    "Delivery",
    "FailedPrecondition",
    "HandBack",
    "Handler",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Publisher",
    "ResourceExhausted",
    "StoreError",
    "Stores",
    "Unauthenticated",
    "Unavailable",
    "new_id",
]
