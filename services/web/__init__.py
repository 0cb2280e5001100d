"""ackbot.web: the comment section's web front door (`ackbot-web`)."""
