"""The embedded default cluster: a Ray head plus N worker nodes as processes on this machine."""
