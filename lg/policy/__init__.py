"""Risk policies: grade commands, effects and profile relaxations green < yellow < orange < red."""
