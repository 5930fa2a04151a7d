"""What commands write for people and programs: tables, JSON, CSV, pictures (one output layer)."""
