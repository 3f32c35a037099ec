from lstmmt.cli import main

main()
