"""Who may call and what they may run: authentication, limits, scoping, SQL policy, audit."""
