. ./calc.sh
[ "$(add 2 3)" = 5 ] || { echo "add 2 3 gave $(add 2 3), expected 5"; exit 1; }
echo ok
