"""The ackbot bot: consumes the store's stream and answers each message once."""
