"""Generated from proto/ackbot/v1 by `make proto`. Do not edit."""
