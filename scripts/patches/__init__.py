"""The upstream patch series: ``series`` declares it, ``build`` generates and checks it."""
