"""Generated from proto/ackbot/web/v1 by `make proto`. Do not edit."""
